//! Recovers the text of a custom serialization error, which postcard discards: on the
//! error path only, the value is serialized again into a serializer that writes nothing
//! and keeps the message.
use serde::ser::{self, Serialize};
use std::fmt::Display;

#[derive(Debug)]
pub(crate) struct Msg(pub String);

impl Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Msg {}
impl ser::Error for Msg {
    fn custom<T: Display>(msg: T) -> Self {
        Msg(msg.to_string())
    }
}

/// The message of the first custom error `value` raises while serializing, if any.
pub(crate) fn custom_message<T: Serialize + ?Sized>(value: &T) -> Option<String> {
    value.serialize(Probe).err().map(|m| m.0)
}

struct Probe;

macro_rules! leaf {
    ($($name:ident($($t:ty),*);)*) => {
        $(fn $name(self, $(_: $t),*) -> Result<(), Msg> { Ok(()) })*
    };
}

impl ser::Serializer for Probe {
    type Ok = ();
    type Error = Msg;
    type SerializeSeq = Probe;
    type SerializeTuple = Probe;
    type SerializeTupleStruct = Probe;
    type SerializeTupleVariant = Probe;
    type SerializeMap = Probe;
    type SerializeStruct = Probe;
    type SerializeStructVariant = Probe;
    leaf! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_i128(i128); serialize_u8(u8); serialize_u16(u16);
        serialize_u32(u32); serialize_u64(u64); serialize_u128(u128); serialize_f32(f32);
        serialize_f64(f64); serialize_char(char); serialize_str(&str); serialize_bytes(&[u8]);
        serialize_none(); serialize_unit(); serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Msg> {
        v.serialize(Probe)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Msg> {
        v.serialize(Probe)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), Msg> {
        v.serialize(Probe)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Probe, Msg> {
        Ok(Probe)
    }
    fn serialize_tuple(self, _: usize) -> Result<Probe, Msg> {
        Ok(Probe)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Probe, Msg> {
        Ok(Probe)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Probe, Msg> {
        Ok(Probe)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Probe, Msg> {
        Ok(Probe)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Probe, Msg> {
        Ok(Probe)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Probe, Msg> {
        Ok(Probe)
    }
}

macro_rules! compound {
    ($($tr:ident :: $f:ident $(, $key:ty)?;)*) => {$(
        impl ser::$tr for Probe {
            type Ok = ();
            type Error = Msg;
            fn $f<T: Serialize + ?Sized>(&mut self, $(_: $key,)? v: &T) -> Result<(), Msg> {
                v.serialize(Probe)
            }
            fn end(self) -> Result<(), Msg> {
                Ok(())
            }
        }
    )*};
}
compound! {
    SerializeSeq::serialize_element;
    SerializeTuple::serialize_element;
    SerializeTupleStruct::serialize_field;
    SerializeTupleVariant::serialize_field;
    SerializeStruct::serialize_field, &'static str;
    SerializeStructVariant::serialize_field, &'static str;
}

impl ser::SerializeMap for Probe {
    type Ok = ();
    type Error = Msg;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), Msg> {
        k.serialize(Probe)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Msg> {
        v.serialize(Probe)
    }
    fn end(self) -> Result<(), Msg> {
        Ok(())
    }
}
